"""The lowest layer: errors, fault points, the metadata store, storage
primitives, the home and names. Imports neither TensorFlow nor TFX."""
