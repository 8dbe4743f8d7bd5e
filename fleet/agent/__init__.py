"""The vehicle agent: the program that runs in the car. It must never import Django (a test checks it).

Also its own distribution, `idlefleet-agent` (pyproject.toml in this folder): these same files are installed as the
`idlefleet_agent` package, so its modules import one another relatively and never as `fleet.agent`.
"""
