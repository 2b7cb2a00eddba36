"""Data shipped with vitops (installed as the package `vitops._weights`): the registry of known
checkpoints (registry.json) and the small models the project trains itself."""
