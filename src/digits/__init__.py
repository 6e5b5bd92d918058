"""Digit Recognizer: a k-fold CNN pipeline for Kaggle's digit-recognizer competition.

Stages, each a module with a pure function at its heart and files on disk between them:
download (Kaggle API or a local copy) -> data (CSV -> validated uint8 tensors) -> folds ->
train (one CNN per fold, reports) -> submission.
"""

__version__ = "0.1.0"
