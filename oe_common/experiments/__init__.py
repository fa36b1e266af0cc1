"""Running experiments: the staged runner, run folders, recipe arguments and presets, reporting, data checks."""
