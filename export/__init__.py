"""ONNX export (installed as `mrcnn.export`): the `trt` flavour with mrcnn custom ops and the `portable` flavour.

Arrives with the export issue; the package exists now so that the install layout is final.
"""
