"""cli: the ``repmon`` console script; ``main.py`` assembles one module per verb."""
