//! Teacher (YOLOv12n) against student (SSD-MobileNetV2 COCO, off the shelf) on PETS09-S2L1's
//! held-out frames 401-795, people only, full frames: the teacher must be clearly better, which is
//! what makes it worth labelling for the student. `cargo run --release -p autotuner-detect
//! --example pets09` also scores the teacher on motion crops and writes the figures.

mod common;

use autotuner_detect::Family;
use common::*;

#[test]
fn the_teacher_is_clearly_better_than_the_student() {
    // Every second frame: people move little from one frame to the next, and the gap between
    // the two detectors is the same on half of them (`--example pets09` scores all).
    let teacher = pets09_person_ap(Family::Yolo, None, 2);
    let student = pets09_person_ap(Family::SsdRaw, None, 2);
    eprintln!("teacher {teacher:?}\nstudent {student:?}");
    assert!(
        teacher.ap50 >= student.ap50 + 0.1,
        "AP50: teacher {} vs student {}",
        teacher.ap50,
        student.ap50
    );
    assert!(
        teacher.ap >= student.ap + 0.05,
        "AP: teacher {} vs student {}",
        teacher.ap,
        student.ap
    );
    assert!(
        teacher.ap50 > 0.8,
        "the teacher finds the people: AP50 {}",
        teacher.ap50
    );
}
