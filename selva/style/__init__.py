"""Pushing SelVA's output toward a target timbre without retraining the generator.

``reference``: mel statistics of a set of reference clips; ``ditto``: inference-time
optimisation of the initial noise toward them; ``steering``: activation-steering vectors
added to the generator's hidden states.
"""
