"""The completion engine: every model call of every surface runs through `engine.run` (on a
worker) after `admission.admit` (on the web), and ends in `engine.close`."""
