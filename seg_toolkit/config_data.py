"""The ``data`` section of the config (:class:`DataConfig`, and its ``bands`` :class:`BandsConfig`): where the
images and masks are and how they are stored. The fields' comments say what each key means; the checks of
their values are :mod:`seg_toolkit.config_data_checks`. Re-exported by :mod:`seg_toolkit.config`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional, Union

__all__ = ["BandsConfig", "DataConfig", "Task"]

Task = Literal["binary", "multilabel", "multiclass"]


@dataclass
class BandsConfig:
    """Each image is a folder ``<id>/`` of one ``.npy`` file per band (Google contrails: ``band_08.npy`` ..
    ``band_16.npy``, ``(H, W, T)`` each; seg_toolkit/data/bands.py)."""

    files: list[str] = field(default_factory=list)  # band file names without data.image_ext, in channel order; [] = off
    frame: Optional[int] = None  # (H, W, T) band files: the time step taken (contrails: 4, the labelled one)
    # files are bands 11, 14, 15: the contrails ash false colour (R = b15 - b14 over -4..2 K, G = b14 - b11 over
    # -4..5 K, B = b14 over 243..303 K), 3 channels, no data.image_range; false: raw bands over data.image_range
    ash: bool = False
    mask: Optional[str] = None  # folder layout: the mask file in each image's folder (contrails: human_pixel_masks.npy)


@dataclass
class DataConfig:
    root: str = "data/demo"  # competition folder; every path below is relative to it
    task: Task = "binary"
    num_classes: int = 1  # output channels (multiclass: classes without the void id)
    class_names: list[str] = field(default_factory=list)
    classes_csv: Optional[str] = None  # CSV id,name,r,g,b[,ignore]: names, colours, void id
    ignore_index: Optional[int] = None  # void label in mask files / label maps; never scored
    layout: Literal["csv", "folder"] = "csv"  # images + RLE CSV, or images + mask files
    train_images: str = "train/images"
    train_masks: str = "train/masks"  # folder layout: mask file has the image's id
    train_csv: str = "train.csv"  # csv layout: RLE rows (and the id list for folds)
    train_lists: list[str] = field(default_factory=list)  # folder layout: files of "image mask" lines
    id_column: str = "id"
    rle_column: str = "rle_mask"
    class_column: Optional[str] = None  # csv layout, one row per image and class (1-based ids, or class names)
    # csv layout, one row per image and class with the class in the id (no class column): how id_column's values
    # combine them, "{id}_{cls}" (Severstal's first train.csv: 0002cc93b.jpg_1) or "{id}_{name}" (Understanding
    # Clouds' Image_Label: 0011165.jpg_Fish, names from class_names)
    id_format: Optional[str] = None
    rle_order: Literal["F", "C"] = "F"  # pixel order of the RLE: F column-major (Kaggle), C row-major
    # csv layout, the RLE style of train_csv (as submission.rle_index_base / rle_starts / empty_token; SIIM: 0, relative, '-1')
    rle_index_base: int = 1  # starts number pixels from 1 (Kaggle) or 0
    rle_starts: Literal["absolute", "relative"] = "absolute"  # relative: each start is the gap after the previous run's end
    rle_empty_token: str = ""  # what an empty mask is written as besides an empty field: '-1' (SIIM), ...; not an RLE
    rle_instances: bool = False  # an id (and class) may repeat, one row per object (Airbus, DSB 2018, SIIM): rows unioned
    image_ext: str = ".png"
    # csv layout, images in nested folders whose ids are read off their paths (seg_toolkit/data/nested.py): a regex
    # searched in each image's path under train_images / test_images ('/' between folders), its named groups filled
    # into image_id_format. UW-Madison: train/case123/case123_day20/scans/slice_0001_266_266_1.50_1.50.png is id
    # case123_day20_slice_0001 with '(?P<day>case\d+_day\d+)/scans/(?P<slice>slice_\d+)_' and '{day}_{slice}'
    image_id_pattern: Optional[str] = None
    image_id_format: str = "{id}"
    mask_ext: str = ".png"  # appended to the image's id: ".png", or e.g. "_mask.gif" (Carvana)
    # binary mask files: a pixel is foreground when its value >= mask_threshold (null: any value > 0).
    # Required for lossy (JPEG, lossy WebP) masks, whose compression noise makes pixels near every edge non-zero
    mask_threshold: Optional[int] = None
    # how a mask file holds its classes (folder layout; seg_toolkit.data.masks). ids: pixel values are class ids,
    # from the single channel or from channel mask_channel (0 = red: CARLA); colors: RGB colours of a colour table
    mask_format: Literal["ids", "colors"] = "ids"
    mask_channel: Optional[int] = None  # ids in one channel of an RGB(A) mask file
    mask_colors: list[list[int]] = field(default_factory=list)  # colors: [r, g, b] of class 0, 1, ... (empty: classes_csv r,g,b)
    mask_void_colors: list[list[int]] = field(default_factory=list)  # colors: [r, g, b] read as void
    # colors: null = every pixel must be a table colour exactly (lossless files); a distance = nearest table colour
    # within that RGB distance, farther pixels void (lossy JPEG / WebP colour masks)
    mask_color_tolerance: Optional[float] = None
    # colors with a tolerance, opt-in, for class edges of blended colours (JPEG, downscaled labels: a sky/building blend
    # is nearest to wall's colour): a pixel within mask_color_clean of its nearest table colour is clean and takes it;
    # any other pixel may only take a class (or void colour) with a clean pixel within mask_color_support_px pixels
    # (square window): the nearest such colour within mask_color_tolerance, else void. null = nearest colour everywhere
    mask_color_support_px: Optional[int] = None
    mask_color_clean: Optional[float] = None  # with mask_color_support_px: a distance, at most the tolerance (e.g. 15)
    # value -> class id or "void", e.g. {1: 1, 2: 0, 3: void} (Oxford-IIIT Pet trimap); a value not listed is an error
    mask_values: dict[int, Union[int, str]] = field(default_factory=dict)
    # image and label side by side in one file: which part is the image (the label is the other part)
    pair_split: Optional[Literal["image_left", "image_right", "image_top", "image_bottom"]] = None
    pair_split_at: Optional[int] = None  # column (row) where the second part starts; null = the middle
    # binary, folder layout: each image is a folder <id>/images/<id><image_ext> holding one mask file per object in
    # <id>/masks/ (Kaggle DSB 2018), read as their union
    instance_folders: bool = False
    # instance_folders: union = every object pixel is foreground; borders = pixels within instance_border_px of two
    # different objects become background, so touching objects stay apart (U-Net paper; seg_toolkit/data/instances.py)
    instance_target: Literal["union", "borders"] = "union"
    instance_border_px: int = 1
    # the U-Net paper's weight map (data/weight_map.py): target background near two objects (instance_folders or
    # rle_instances) weighs 1 + border_weight * exp(-(d1 + d2)^2 / (2 border_sigma^2)) in bce / focal; 0 = off
    border_weight: float = 0.0
    border_sigma: float = 5.0
    # multilabel, folder layout: one binary mask file per class, train_masks/<pattern><mask_ext>; fields {id}, and
    # {cls} (1-based class number) or {name} (class name): "{id}_{cls}", "{name}/{id}" (seg_toolkit/data/class_masks.py)
    mask_per_class: Optional[str] = None
    missing_class_masks: Literal["error", "empty"] = "error"  # mask_per_class: a class file that is not there
    # csv layout: images in train_images without a row: ignore (not used, counted in the log), empty (empty masks), error
    unlisted_images: Literal["ignore", "empty", "error"] = "ignore"
    in_channels: int = 3  # 1 = grayscale, 3 = RGB, 4 = RGBA kept
    # [low, high]: raw image values mapped linearly onto 0..255 (clipped), the same for every image, before anything
    # else: [0, 4095] for 12-bit microscopy in 16-bit files. null: 8-bit files as they are, 16-bit over 0..65535;
    # 32-bit integer and float images need it (seg_toolkit.data.io.read_image)
    image_range: Optional[list[float]] = None
    # a file tagged with an EXIF orientation other than 1 (a phone photo stored sideways, shown turned by viewers):
    # error (refused, naming it), apply (turned as shown, images and masks alike), ignore (the pixels as stored)
    exif_orientation: Literal["error", "apply", "ignore"] = "error"
    bands: BandsConfig = field(default_factory=BandsConfig)  # images as folders of band files (contrails)
    group_column: Optional[str] = None  # column of train_csv used by GroupKFold
    group_pattern: Optional[str] = None  # or a regex whose first group, matched on each id, is its group (e.g. "^([^_]+)_")
    test_images: str = "test/images"
    test_lists: list[str] = field(default_factory=list)  # labelled held-out lists (evaluate --split test)
    sample_submission: str = "sample_submission.csv"
    # [height, width] every mask is scored, post-processed and submitted at, whatever the image's size (Understanding
    # Clouds: [350, 525] for its 1400x2100 images); null = each image's own. Probabilities are resized to it
    # bilinearly, the ground truth by the nearest pixel centre; training is unchanged (transforms.resize)
    score_size: Optional[list[int]] = None
    max_image_pixels: int = 50_000_000  # larger images are refused before decoding
    limit: Optional[int] = None  # use only the first N labelled samples (smoke tests, notebooks)
    # training ids left out of everything a run does with its training data (folds, training, OOF, CV, tune,
    # the report): known bad labels, e.g. Oxford pets' Abyssinian_34, whose trimap has no pet. An id that is
    # not a training id is an error naming it; a run's folds.csv made before the list changed is refused
    exclude_ids: list[str] = field(default_factory=list)
