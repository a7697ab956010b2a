"""What to build: the compile configuration, recipes, device targets and their constraints, precision."""
