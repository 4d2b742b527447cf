"""LiteRT (TFLite) versions of a job's model: converting them, writing them, running them.

- `runtime`: running a `.tflite` file (file names, the interpreter wrapper for clip and
  streaming models, loading a job's engine): what `trainer.predict`, `trainer.detect`
  and the live server need. Imports neither TensorFlow nor the converter.
- `flatbuffer`: what a file holds (op types, tensors kept float, tensor arena size).
- `convert`: the front end in LiteRT ops, freezing, float and int8 conversion.
- `stream`: the streaming models (32 ms per call, state in and out).
- `export`: writes a job's files, and `python -m trainer.litert` for an older job.

Importing the package imports none of them.
"""
