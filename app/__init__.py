"""fmrec's FastAPI service and command line; imports `model`, never the other way round."""
