"""Thin DVC stage entry points: read params, call the package, write the outputs dvc.yaml declares."""
