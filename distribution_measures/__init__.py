"""Deep distribution measures (DeepWSD / DeepJSD / DeepSKLD, Liao et al., IEEE TIP 2024).

Not implemented yet: this package registers no metric until its issue lands.
"""
