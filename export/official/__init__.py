"""Importing the authors' released DSANet checkpoints (``dsanet import-official``).

``layout`` knows every key and shape of the official state dict and infers the CLIP geometry from it,
``load`` reads a file safely and validates it, ``mapping`` puts the weights onto our model (CLIP
towers in Hugging Face form, DSANet head, text adapters, SGNM) and ``importer`` writes the bundle.
"""
