"""What a trained CMP is for beyond representation learning (the paper's two demos), on top of
`cmp_tf.runtime.Propagator`, so every exported format serves them:

    animate.py    a still image + drawn arrows -> dense flow -> frames warped along it
    annotate.py   a few positive / negative clicks -> an object mask (the paper's annotation)
    web/          a local page over both: load an image, draw arrows and clicks, see the results
    inputs.py     the boundary they share: flag strings, image files, model paths -> checked

Each app is a library function on numpy arrays (what the page and benchmarks/annotation.py
call) and a thin `python -m cmp_tf.apps.<name>` main.
"""
