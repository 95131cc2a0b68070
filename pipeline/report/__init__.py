"""The run report: every table, sample grid and plot of one ``dvc repro`` in one HTML file.

``collect`` reads the stage outputs into a plain context dict (images as base64 data URIs, tables
as HTML), ``provenance`` adds the git commit, the params hash and the data checksums of
``dvc.lock``, and ``render`` turns the context into one self-contained HTML string through the
package's Jinja2 template. Nothing here writes files; ``pipeline.stages.report`` does.
"""
