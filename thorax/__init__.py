"""Thorax: synthetic chest radiographs from conditional progressive-growing GANs.

This package holds what every side of the project shares and that needs neither torch nor a web
stack: the label space, per-image latents, the error shown to command-line users, and the `thorax`
command itself, which imports each side only when its subcommand runs.
"""

__version__ = "0.1.0"
