"""Local tooling: the whole stack as child processes (``stack``) and the demo run on it."""
