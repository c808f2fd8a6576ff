make run    # set up .venv, build the default classifier, start everything on its embedded defaults
make test   # set up .venv, build the default classifier, run the test suite
