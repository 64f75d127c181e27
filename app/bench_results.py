"""The file the benchmark writes and `/compare` reads: its name and the version of its shape.

Here in `app`, not in `bench`, so the web side can check a results file without importing the
benchmark (the request path stays free of it).
"""

RESULTS_FILE = "results.json"
# Bump when results.json changes shape: /compare then says the file is from another version
# instead of failing on it.
SCHEMA = 1
