"""Attacks: the PGD family (``pgd``; ``smoothed_pgd`` for smoothed classifiers), used in
training and in the attack stage, whose parts ``suite`` lists: the kinds and their settings
(``registry``), the code that runs them (``ours``, ``adapters``), the runner and the outcome
log."""
