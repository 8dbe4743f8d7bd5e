"""The vehicle agent: the program that runs in the car. It must never import Django (a test checks it)."""
