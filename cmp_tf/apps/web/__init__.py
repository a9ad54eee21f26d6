"""A local page over the apps: load an image, draw arrows and clicks, see the flow, the
animation and the mask. `python -m cmp_tf.apps.web`; server.py is the server, static/ the page."""
