"""The terminal view: subscribes to engine events; renders records the same way for replay."""
