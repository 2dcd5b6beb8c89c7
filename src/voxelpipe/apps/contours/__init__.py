"""``contours``: text polygon contours (cardiac MRI challenge layout) paired with their DICOM images, filled into
masks, written as image/mask pairs (one npz per pair, or one Zarr group per patient), optionally with PNG
overlays.

Input layout::

    link.csv                          patient_id,original_id  (DICOM folder name, contour folder name)
    DICOM_DIR/<patient_id>/...        the patient's DICOM images (any names, any depth)
    CONTOUR_DIR/<original_id>/<kind>-contours/IM-<series>-<NNNN>-<kind>contour-<anything>.txt

A contour file holds one polygon, a line ``x y`` per vertex in pixel coordinates (x = column, y = row, pixel
centres at integers) of the image whose InstanceNumber (read from the DICOM header, never from a file name) is
``NNNN``. Masks follow the pixel-centre rule of ``voxelpipe.ops.polygon.fill_polygons`` (= skimage's polygon2mask).

Output (``patient_key`` = ``keys.series_key(patient_id)``; no patient ID in any path)::

    OUT/<patient_key>/<InstanceNumber:04d>.npz     fmt="npz": image, mask_<kind>..., meta_json
    OUT/<patient_key>.zarr                         fmt="zarr": image, masks/<kind>, instance_numbers, has_<kind>
    OUT/overlays/<patient_key>/<NNNN>.png          overlay=True
    OUT/filelist.txt                               the data files of this run's pairs (written or kept), sorted
    OUT/overlays/filelist.txt                      the overlay PNGs likewise
    OUT/pairs.csv                                  one row per pair: key, instance, kinds, path, status (done or
                                                   skipped), overlay, overlay_status
    OUT/problems.csv                               everything that could not be paired, parsed or written

Modules: ``parse`` (contour files, kinds, link.csv), ``index`` (pairing images with contour files), ``image`` (the
DICOM image of a pair), ``fill`` (masks from polygons), ``write`` (npz / Zarr outputs), ``overlay`` (PNGs),
``pipeline`` (``convert_contours``), ``records`` (the values passed between them).
"""
from voxelpipe.apps.contours.fill import fill_mask
from voxelpipe.apps.contours.parse import ContourParseError, parse_kinds, read_contour, read_link
from voxelpipe.apps.contours.pipeline import FORMATS, auto_workers, convert_contours, run_patient
from voxelpipe.apps.contours.records import ContoursResult, Pair, PatientTask, Problem

__all__ = ["FORMATS", "ContourParseError", "ContoursResult", "Pair", "PatientTask", "Problem", "auto_workers",
           "convert_contours", "fill_mask", "parse_kinds", "read_contour", "read_link", "run_patient"]
