"""Corpora and probe suites: ``corpus`` reads the committed training corpora, ``suites`` the probe
suites; ``build_corpora`` and ``build_probes`` regenerate both (see ``datasets/rebuild.sh``)."""
