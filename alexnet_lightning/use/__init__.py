"""Using a trained network: classify images from a checkpoint alone (``classify``), export it (``export``, and the
repository's ``hubconf.py``), and the paper's pictures of what it learned (``figures``, Section 6.1). Files are read
without running code from them (``record``)."""
