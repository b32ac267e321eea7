"""Thorax training: a conditional progressive-growing GAN (PGGAN) on chest radiographs.

Never imports the service. The modules read top to bottom in the order data takes:
`config` (what to train), `data` (real radiographs, labels, the patient-disjoint split),
`networks` (generator and discriminator), `loss` (WGAN-GP with the auxiliary label loss),
`schedule` (which resolution and fade-in when), `checkpoint` (safetensors + JSON state),
`train` (the loop), `sample` (images from a trained generator).
"""
