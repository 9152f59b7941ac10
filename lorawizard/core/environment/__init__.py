"""The environment step: the doctor (checkout, trainer Python, torch vs driver) and its one-key fixes."""
