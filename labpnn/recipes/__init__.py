"""The packaged recipes (YAML files beside this module)."""

DEFAULT_RECIPE = "mnist1d-memristor"  # what `labpnn run` and the GUI start with
