"""Flow tests: scripted model replies for a flow's logic, no model called (``deliberate test``,
the pytest plugin, docs/testing.md). Modules load on use: the pytest plugin imports this package
in every pytest run, so it stays light."""
