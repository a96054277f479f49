"""robustreg: reproduce the tables of four papers on training and certifying robust classifiers."""
