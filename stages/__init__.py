"""Programs that run inside jobs (`python -m stages <name>`). The only code in this project that imports torch."""
