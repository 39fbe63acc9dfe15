"""The soak (`make soak`): the Procfile's processes under a steady mixed load for minutes, with
random faults injected, then every accepted task counted. See tests/soak/run.py and the "Soak"
section of docs/reliability.md. Not collected by pytest (no test_ files)."""
