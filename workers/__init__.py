"""DATA PLANE: Celery app, inference and results (the queue-and-infer issue builds it).

Kept separate from ``dicom_node`` so the node never imports torch.
"""
