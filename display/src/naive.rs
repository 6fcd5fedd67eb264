//! The naive baseline (`--display-mode naive`): damage replayed in order, `copy` for copies, every
//! dirty rectangle one `rect`+`cfill` when it is one colour and one PNG otherwise; no tiles, no hashes,
//! no copy detection, no lossy formats. guacr-bench measures the planner against it.

use bytes::BytesMut;
use guac_proto::encode;

use crate::{emit_copy, emit_image, image, Damage, DamageOp, Planner, Rect, Source, Stats, MODE_OVER};

/// Above this many dirty rectangles in a row, one bounding rectangle is cheaper than many PNG headers.
const MERGE_THRESHOLD: usize = 16;

pub(crate) fn encode_naive(p: &mut Planner, src: &dyn Source, d: &Damage<'_>, out: &mut BytesMut) -> Stats {
    let mut st = Stats::default();
    if (p.width, p.height) != (d.width, d.height) {
        encode(out, "size").int(0).uint(d.width.into()).uint(d.height.into()).finish();
        p.reset(d.width, d.height);
    }
    let full = [DamageOp::Dirty(Rect::new(0, 0, d.width, d.height))];
    let ops = if d.full { full.to_vec() } else { merge_dirty_runs(d.ops) };
    let mut bgrx = Vec::new();
    let mut rgb = Vec::new();
    let mut png = Vec::new();
    for op in ops {
        match op {
            DamageOp::Copy { src_x, src_y, dst } => {
                emit_copy(out, src_x, src_y, dst);
                st.copies += 1;
            }
            DamageOp::Dirty(rect) => {
                if rect.w == 0 || rect.h == 0 || !rect.fits(d.width, d.height) {
                    continue;
                }
                src.read_rect(rect, &mut bgrx);
                if let Some([r, g, b]) = image::solid_colour(&bgrx) {
                    encode(out, "rect")
                        .int(0)
                        .uint(rect.x.into())
                        .uint(rect.y.into())
                        .uint(rect.w.into())
                        .uint(rect.h.into())
                        .finish();
                    encode(out, "cfill")
                        .int(MODE_OVER)
                        .int(0)
                        .uint(r.into())
                        .uint(g.into())
                        .uint(b.into())
                        .uint(255)
                        .finish();
                    st.fills += 1;
                    continue;
                }
                image::bgrx_to_rgb(&bgrx, &mut rgb);
                image::png(rect.w, rect.h, image::PngPixels::Rgb(&rgb), &mut png);
                let stream = p.stream();
                emit_image(out, stream, "image/png", rect.x, rect.y, &png);
                st.png += 1;
            }
        }
    }
    st
}

/// Replaces long runs of consecutive `Dirty` ops by their bounding box, unless the box would cover the
/// source of a later copy (the client would then copy final instead of intermediate pixels).
fn merge_dirty_runs(ops: &[DamageOp]) -> Vec<DamageOp> {
    let mut out = Vec::with_capacity(ops.len());
    let mut i = 0;
    while i < ops.len() {
        let run_end = ops[i..].iter().position(|op| !matches!(op, DamageOp::Dirty(_))).map_or(ops.len(), |p| i + p);
        if run_end - i > MERGE_THRESHOLD {
            let bbox = ops[i..run_end].iter().fold(Rect::new(0, 0, 0, 0), |acc, op| acc.union(&op.target()));
            let covers_later_source = ops[run_end..].iter().filter_map(DamageOp::source).any(|s| s.intersects(&bbox));
            if !covers_later_source {
                out.push(DamageOp::Dirty(bbox));
                i = run_end;
                continue;
            }
        }
        out.extend_from_slice(&ops[i..run_end.max(i + 1)]);
        i = run_end.max(i + 1);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dirty(x: u32) -> DamageOp {
        DamageOp::Dirty(Rect::new(x, 0, 1, 1))
    }

    #[test]
    fn long_dirty_runs_merge_unless_a_later_copy_reads_them() {
        let run: Vec<DamageOp> = (0..20).map(dirty).collect();
        assert_eq!(merge_dirty_runs(&run), vec![DamageOp::Dirty(Rect::new(0, 0, 20, 1))]);
        let mut with_copy = run.clone();
        with_copy.push(DamageOp::Copy { src_x: 25, src_y: 0, dst: Rect::new(40, 0, 2, 1) });
        assert_eq!(merge_dirty_runs(&with_copy).len(), 2);
        let mut reading_copy = run.clone();
        reading_copy.push(DamageOp::Copy { src_x: 10, src_y: 0, dst: Rect::new(40, 0, 2, 1) });
        assert_eq!(merge_dirty_runs(&reading_copy).len(), 21);
        let short: Vec<DamageOp> = (0..3).map(dirty).collect();
        assert_eq!(merge_dirty_runs(&short), short);
    }
}
