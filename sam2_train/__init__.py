"""SAM-2 training library of SSS: ``model`` (the method), ``engine`` (the run machinery), ``evaluation``."""
