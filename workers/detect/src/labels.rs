//! COCO class names, and the two ways detectors number them: YOLO's 80 contiguous indices and the
//! TF Object Detection API's 90 category ids (1-based, with gaps). Detections carry the COCO
//! category id, so a `classes: [person, car]` filter means the same for every detector.

/// (COCO category id, name) of the 80 COCO classes, in YOLO index order.
pub const COCO: [(u32, &str); 80] = [
    (1, "person"),
    (2, "bicycle"),
    (3, "car"),
    (4, "motorcycle"),
    (5, "airplane"),
    (6, "bus"),
    (7, "train"),
    (8, "truck"),
    (9, "boat"),
    (10, "traffic light"),
    (11, "fire hydrant"),
    (13, "stop sign"),
    (14, "parking meter"),
    (15, "bench"),
    (16, "bird"),
    (17, "cat"),
    (18, "dog"),
    (19, "horse"),
    (20, "sheep"),
    (21, "cow"),
    (22, "elephant"),
    (23, "bear"),
    (24, "zebra"),
    (25, "giraffe"),
    (27, "backpack"),
    (28, "umbrella"),
    (31, "handbag"),
    (32, "tie"),
    (33, "suitcase"),
    (34, "frisbee"),
    (35, "skis"),
    (36, "snowboard"),
    (37, "sports ball"),
    (38, "kite"),
    (39, "baseball bat"),
    (40, "baseball glove"),
    (41, "skateboard"),
    (42, "surfboard"),
    (43, "tennis racket"),
    (44, "bottle"),
    (46, "wine glass"),
    (47, "cup"),
    (48, "fork"),
    (49, "knife"),
    (50, "spoon"),
    (51, "bowl"),
    (52, "banana"),
    (53, "apple"),
    (54, "sandwich"),
    (55, "orange"),
    (56, "broccoli"),
    (57, "carrot"),
    (58, "hot dog"),
    (59, "pizza"),
    (60, "donut"),
    (61, "cake"),
    (62, "chair"),
    (63, "couch"),
    (64, "potted plant"),
    (65, "bed"),
    (67, "dining table"),
    (70, "toilet"),
    (72, "tv"),
    (73, "laptop"),
    (74, "mouse"),
    (75, "remote"),
    (76, "keyboard"),
    (77, "cell phone"),
    (78, "microwave"),
    (79, "oven"),
    (80, "toaster"),
    (81, "sink"),
    (82, "refrigerator"),
    (84, "book"),
    (85, "clock"),
    (86, "vase"),
    (87, "scissors"),
    (88, "teddy bear"),
    (89, "hair drier"),
    (90, "toothbrush"),
];

/// The COCO category id of YOLO class index `index` (0..80).
pub fn coco_id_of_yolo_index(index: usize) -> Option<u32> {
    COCO.get(index).map(|&(id, _)| id)
}

/// The name of COCO category `id` (the TF detectors' class ids are these ids).
pub fn name(id: u32) -> Option<&'static str> {
    COCO.iter().find(|&&(i, _)| i == id).map(|&(_, n)| n)
}

/// The COCO category id called `name` (case-insensitive; a few common synonyms accepted).
pub fn id(name: &str) -> Option<u32> {
    let name = name.trim().to_ascii_lowercase();
    let name = match name.as_str() {
        "pedestrian" | "people" => "person",
        "motorbike" => "motorcycle",
        "aeroplane" => "airplane",
        "sofa" => "couch",
        "tvmonitor" | "television" => "tv",
        "diningtable" => "dining table",
        other => other,
    };
    COCO.iter().find(|&&(_, n)| n == name).map(|&(i, _)| i)
}

/// Category ids for class names; the names that are not COCO classes are returned as errors.
pub fn ids(names: &[impl AsRef<str>]) -> Result<Vec<u32>, String> {
    names
        .iter()
        .map(|n| id(n.as_ref()).ok_or_else(|| n.as_ref().to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_numberings_meet_in_coco_ids() {
        assert_eq!(coco_id_of_yolo_index(0), Some(1));
        assert_eq!(coco_id_of_yolo_index(2), Some(3));
        assert_eq!(coco_id_of_yolo_index(79), Some(90));
        assert_eq!(coco_id_of_yolo_index(80), None);
        assert_eq!(name(3), Some("car"));
        assert_eq!(name(12), None, "a gap in the 90-id map");
        assert_eq!(id("Person"), Some(1));
        assert_eq!(id("motorbike"), Some(4));
        assert_eq!(ids(&["person", "car"]), Ok(vec![1, 3]));
        assert_eq!(ids(&["person", "unicorn"]), Err("unicorn".to_string()));
        let mut seen: Vec<u32> = COCO.iter().map(|c| c.0).collect();
        seen.dedup();
        assert_eq!(seen.len(), 80);
        assert!(seen.windows(2).all(|w| w[0] < w[1]));
    }
}
