"""sim: a realistic sending fleet's events with ground truth, for demos, tests and evaluation.

May use the vocabulary of every stage (it sits on top); nothing in the core imports ``sim``.
"""
