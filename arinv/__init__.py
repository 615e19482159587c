"""arinv: inverting adversarially robust networks for image synthesis.

The library is pure PyTorch: importing it never imports Ray, MLflow or boto3.
"""

__version__ = "0.1.0"
