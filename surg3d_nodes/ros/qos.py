"""The QoS of every stream of the graph, chosen here and nowhere else (topic names: topics.py).

Kinds of stream and why:
- SENSOR (images, camera_info, point clouds): newest matters, a frame late is worth less than the next one.
  Publishers are RELIABLE (a reliable writer is matched by reliable and best-effort readers: RViz, rosbag2,
  ours); subscriptions are BEST_EFFORT, the sensor-data profile, because a reliable reader never matches a
  best-effort writer and many camera drivers publish best-effort. Between processes this needs Fast DDS's
  LARGE_DATA transports with large shared-memory segments (config/fastdds.xml, which the launchers select): on
  the default UDP transport best-effort loses about 95% of large frames, and in a 512 KiB segment the first of
  two large samples published back to back.
- STATE (poses, tf, joint states, dVRK arm kinematics): every sample counts (the pose of an image stamp is
  interpolated between samples): reliable, deep history.
- STATUS (/recon/status, /surg3d/health): reliable and latched (transient-local), so a viewer or monitor that
  connects late has the current state at once. Subscriptions stay volatile: they match latched and plain
  publishers alike.
- EVENT (heartbeats, diagnostics, view requests, clicked points): reliable, volatile.
- LATCHED: the regions of interest: every region is kept for late joiners.
"""

from __future__ import annotations

from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

from surg3d_nodes.ros import topics

SENSOR, STATE, STATUS, EVENT, LATCHED = "sensor", "state", "status", "event", "latched"

# Per kind: (publisher profile, subscription profile) at the kind's default depth.
_PROFILES: dict[str, tuple[QoSProfile, QoSProfile]] = {
    SENSOR: (QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=5, reliability=ReliabilityPolicy.RELIABLE),
             QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=5, reliability=ReliabilityPolicy.BEST_EFFORT)),
    STATE: (QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=100, reliability=ReliabilityPolicy.RELIABLE),) * 2,
    STATUS: (QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=5, reliability=ReliabilityPolicy.RELIABLE,
                        durability=DurabilityPolicy.TRANSIENT_LOCAL),
             QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=5, reliability=ReliabilityPolicy.RELIABLE)),
    EVENT: (QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=50, reliability=ReliabilityPolicy.RELIABLE),) * 2,
    LATCHED: (QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=100, reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL),) * 2,
}

STREAMS: dict[str, str] = {
    **dict.fromkeys((topics.LEFT_IMAGE, topics.RIGHT_IMAGE, topics.LEFT_INFO, topics.RIGHT_INFO, topics.LEFT_RECT,
                     topics.LEFT_RECT_INFO, topics.DEPTH, topics.DEPTH_CONFIDENCE, topics.DEPTH_POINTS,
                     topics.INSTRUMENT_MASK, topics.INSTRUMENT_PRIOR, topics.DATASET_DEPTH, topics.DATASET_MASK,
                     topics.DATASET_TISSUE, topics.RECON_POINTS, topics.RECON_RENDER, topics.RECON_RENDER_DEPTH,
                     topics.RECON_DEOCCLUDED, topics.RECON_VIEW_IMAGE, topics.SNAPSHOT_POINTS,
                     topics.RECON_GAUSSIANS), SENSOR),
    **dict.fromkeys((topics.CAMERA_POSE, topics.TF), STATE),
    **dict.fromkeys((topics.RECON_STATUS, topics.HEALTH), STATUS),
    **dict.fromkeys((topics.NODE_STATUS, topics.DIAGNOSTICS, topics.RECON_VIEW_REQUEST, topics.CLICKED_POINT,
                     topics.GOAL_POSE, topics.RECON_GAUSSIANS_REQUEST), EVENT),
    **dict.fromkeys((topics.RECON_ROI, topics.RECON_ROI_MARKERS), LATCHED),
}

# Message types by stream kind, for topics known only at run time (bag_replay, recorder, dVRK arm topics).
_TYPE_KINDS = {"sensor_msgs/msg/Image": SENSOR, "sensor_msgs/msg/CompressedImage": SENSOR,
               "sensor_msgs/msg/CameraInfo": SENSOR, "sensor_msgs/msg/PointCloud2": SENSOR,
               "geometry_msgs/msg/PoseStamped": STATE, "sensor_msgs/msg/JointState": STATE,
               "tf2_msgs/msg/TFMessage": STATE}


def _profile(kind: str, subscription: bool, depth: int | None) -> QoSProfile:
    base = _PROFILES[kind][int(subscription)]
    if depth is None:
        return base
    return QoSProfile(history=base.history, depth=depth, reliability=base.reliability, durability=base.durability)


def publisher(topic: str, depth: int | None = None) -> QoSProfile:
    """QoS of a publisher of `topic` (a name from topics.py); `depth` overrides the kind's history depth."""
    return _profile(STREAMS[topic], False, depth)


def subscription(topic: str, depth: int | None = None) -> QoSProfile:
    """QoS of a subscription to `topic` (a name from topics.py); `depth` overrides the kind's history depth."""
    return _profile(STREAMS[topic], True, depth)


def kind_of_type(msgtype: str) -> str:
    """Stream kind of a topic known only by its message type ("sensor_msgs/msg/Image"): SENSOR, STATE or
    EVENT (anything else)."""
    return _TYPE_KINDS.get(msgtype, EVENT)


def for_kind(kind: str, subscription: bool, depth: int | None = None) -> QoSProfile:
    """QoS of a publisher or subscription of stream kind `kind` (for topics known only at run time)."""
    return _profile(kind, subscription, depth)


def recording(offered: list[QoSProfile], depth: int) -> QoSProfile:
    """QoS of a recorder's subscription to a topic whose publishers offer `offered`: reliable unless one of
    them is best-effort (a reliable reader would miss it entirely), as rosbag2 adapts; `depth` absorbs bursts."""
    best_effort = any(o.reliability == ReliabilityPolicy.BEST_EFFORT for o in offered)
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth,
                      reliability=ReliabilityPolicy.BEST_EFFORT if best_effort else ReliabilityPolicy.RELIABLE)
