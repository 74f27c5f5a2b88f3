"""Experiments: the runs a chapter asks for, trained once and cached, and what they
show.

``store`` names every run and is the one run cache; the other modules combine runs into
the book's experiments (controls, seeds, power, learning curve, bilingual, history).
"""
