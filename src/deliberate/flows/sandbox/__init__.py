"""The guarded Jinja2 sandbox flow templates render in (see :mod:`deliberate.flows.templates`)."""
