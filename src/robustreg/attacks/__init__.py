"""Attacks: the PGD family (``pgd``; ``smoothed_pgd`` for smoothed classifiers), used in
training and in the attack stage, whose registry of attacks and runner are ``suite``."""
