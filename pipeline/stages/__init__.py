"""Pipeline stages. Each module has a pure core and a ``run(params, ...)`` that does the I/O."""
