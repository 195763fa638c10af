"""Viewer bridge: a Foxglove WebSocket server (foxglove-sdk) in front of the ROS graph.

Out to viewers (JSON channels with Foxglove schemas, see core/display.py): the Gaussian cloud, rendered
colour / depth (16UC1 mm) / de-occluded / virtual views, the live image with the instrument mask overlaid,
stereo depth, the camera calibration, /tf (with the camera pose), trainer status, node heartbeats,
/diagnostics, the monitor's compact health and the regions of interest as a SceneUpdate; and, binary, the
Gaussian model for the page's splat view (/ui/splats): while a viewer subscribes, the bridge asks the trainer
for the model at `splats_rate` (at the moment a viewer chose on /ui/splats/time, else the newest) and sends
the most opaque `splats_max` Gaussians, 17 bytes each, in chunks.

In from viewers, each validated by core/viewer_input.py (a refused input is logged, counted, answered with the
reason and changes nothing):
- client-publish: /recon/roi or /clicked_point (a point -> a region of interest, stored in
  output_dir/rois.json and published on ROS /recon/roi), /recon/view_request or /goal_pose (a pose -> a
  virtual viewpoint on ROS /recon/view_request), /ui/splats/time (the moment of the splat view);
- services: /recon/pause, /recon/resume, /recon/reset, /recon/save, /recon/roi/delete, /recon/roi/clear;
- parameters: the `tunables` of other nodes, forwarded with the ROS parameter services.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import foxglove
import numpy as np
from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray
from foxglove import Channel, Schema
from foxglove.websocket import (
    Capability,
    MessageSchema,
    Parameter,
    ServerListener,
    Service,
    ServiceRequest,
    ServiceSchema,
    StatusLevel,
)
from geometry_msgs.msg import Point, PointStamped, PoseStamped
from rcl_interfaces.msg import ParameterType
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.parameter import Parameter as RosParameter
from rclpy.parameter_client import AsyncParameterClient
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from std_srvs.srv import Trigger
from tf2_msgs.msg import TFMessage
from visualization_msgs.msg import Marker, MarkerArray

from surg3d_msgs.msg import NodeStatus, RegionOfInterest, TrainerStatus, ViewRequest
from surg3d_msgs.srv import SaveModel
from surg3d_nodes.recon.regions import Region
from surg3d_nodes.ros import topics
from surg3d_nodes.ros.convert import (
    MessageError,
    header,
    msg_to_camera,
    msg_to_image,
    msg_to_pointcloud,
    msg_to_pose,
    ns_to_stamp,
    pose_to_msg,
    region_to_msg,
    stamp_to_ns,
    unpack_rgb,
)
from surg3d_nodes.ros.runtime import WARN, SurgNode, run_node
from surg3d_nodes.system.node_options import FoxgloveBridgeOptions, node_parameters
from surg3d_nodes.viewer import display
from surg3d_nodes.viewer.input import (
    InputError,
    RoiStore,
    Tunable,
    integer,
    parse_empty,
    parse_roi,
    parse_save,
    parse_splat_time,
    parse_view_request,
    tunables,
)

# client-publish topics the bridge accepts -> what they mean
CLIENT_TOPICS = {topics.absolute(t): kind for t, kind in [(topics.RECON_ROI, "roi"), (topics.CLICKED_POINT, "roi"),
                                                          (topics.RECON_VIEW_REQUEST, "view"),
                                                          (topics.GOAL_POSE, "view"),
                                                          (topics.UI_SPLATS_TIME, "splat_time")]}


def _schema(name: str) -> Schema:
    return Schema(name=name, encoding="jsonschema", data=json.dumps(display.json_schema(name)).encode())


def _msg_dict(msg: Any) -> dict:
    """A ROS message as a JSON-able dict (stamps as {sec, nsec}); for status and diagnostics."""
    if hasattr(msg, "get_fields_and_field_types"):
        out = {}
        for name in msg.get_fields_and_field_types():
            out[name] = _msg_dict(getattr(msg, name))
        if set(out) == {"sec", "nanosec"}:
            return {"sec": out["sec"], "nsec": out["nanosec"]}
        return out
    if isinstance(msg, (list, tuple)):
        return [_msg_dict(m) for m in msg]
    if isinstance(msg, bytes):  # `byte` fields (levels) arrive as bytes of length 1
        return msg[0] if len(msg) == 1 else list(msg)
    if isinstance(msg, (np.ndarray, np.generic)):
        return msg.tolist()
    return msg


def _wait(future, timeout: float) -> bool:
    """Wait for an rclpy future from a thread the executor does not run; True when it completed."""
    done = threading.Event()
    future.add_done_callback(lambda _: done.set())
    return done.wait(timeout)


class _Listener(ServerListener):
    """Routes the WebSocket server's callbacks (on its own threads) to the node."""

    def __init__(self, node: FoxgloveBridge) -> None:
        self.node = node

    def on_client_advertise(self, client, channel) -> None:
        self.node.client_advertise(client.id, channel)

    def on_client_unadvertise(self, client, client_channel_id: int) -> None:
        self.node.client_channels.pop((client.id, client_channel_id), None)

    def on_message_data(self, client, client_channel_id: int, data: bytes) -> None:
        self.node.client_message(client.id, client_channel_id, data)

    def on_subscribe(self, client, channel) -> None:
        self.node.resend(channel.topic)

    def on_get_parameters(self, client, param_names, request_id=None):
        return self.node.get_tunables(param_names)

    def on_set_parameters(self, client, parameters, request_id=None):
        return self.node.set_tunables(parameters)


class FoxgloveBridge(SurgNode):
    """The Foxglove WebSocket bridge of the surg3d graph (see the module docstring)."""

    def __init__(self, **kwargs) -> None:
        super().__init__("foxglove_bridge", **kwargs)
        p = self.params.declare(FoxgloveBridgeOptions)
        self.max_points = p.max_points
        self.min_image_dt = 1.0 / p.image_rate
        self.jpeg_quality = p.jpeg_quality
        self.roi_radius = p.roi_radius
        self.timeout = p.service_timeout
        # Type, range and description of each offered parameter come from its node's own declaration.
        self.tunables: dict[str, Tunable] = tunables(p.tunables, node_parameters)
        self.rois = RoiStore(Path(p.output_dir) / "rois.json")

        self._lock = threading.Lock()
        self.client_channels: dict[tuple[int, int], str] = {}
        self._latest: dict[str, bytes] = {}  # channel topic -> newest logged message (for new viewers)
        self._resend: set[str] = set()
        self._last_image: dict[str, float] = {}
        self._mask: np.ndarray | None = None
        self._rect_time = -1e9

        schemas = {
            topics.RECON_POINTS: "foxglove.PointCloud", topics.RECON_RENDER: "foxglove.CompressedImage",
            topics.RECON_RENDER_DEPTH: "foxglove.RawImage",
            topics.RECON_DEOCCLUDED: "foxglove.CompressedImage",
            topics.RECON_VIEW_IMAGE: "foxglove.CompressedImage", topics.DEPTH: "foxglove.RawImage",
            topics.UI_LIVE: "foxglove.CompressedImage", topics.UI_CALIBRATION: "foxglove.CameraCalibration",
            topics.TF: "foxglove.FrameTransforms", topics.UI_ROI_SCENE: "foxglove.SceneUpdate",
            topics.RECON_STATUS: "surg3d_msgs/msg/TrainerStatus",
            topics.NODE_STATUS: "surg3d_msgs/msg/NodeStatus",
            topics.DIAGNOSTICS: "diagnostic_msgs/msg/DiagnosticArray", topics.HEALTH: "surg3d/Health"}
        # Viewer channels carry the topics' names at the root (topics.absolute), whatever the ROS namespace, so
        # the web page and Foxglove layouts always find "/recon/points"; inside, everything is keyed by topic.
        self.channels = {t: Channel(topics.absolute(t), schema=_schema(s), message_encoding="json")
                         for t, s in schemas.items()}
        # The layout is described in viewer/display.py (encode_splats): no machine-readable schema.
        self.splats_channel = Channel(topics.UI_SPLATS, schema=Schema(name="surg3d/Splats", encoding="", data=b""),
                                      message_encoding="surg3d.splats.v1")
        self.splats_max = p.splats_max
        self._splat_time_ns = 0          # the moment the splat view shows (0: the newest)
        self._splat_update = 0
        self._topic_of_channel = {topics.absolute(t): t for t in schemas}

        # ROS side: subscriptions on one exclusive group (ordered per node), clients on a reentrant one.
        subs = MutuallyExclusiveCallbackGroup()
        self.clients_group = ReentrantCallbackGroup()
        # Viewers want the newest image or cloud only: a history of 2 keeps the bridge from working off a backlog.
        for topic in (topics.RECON_POINTS, topics.SNAPSHOT_POINTS):
            self.subscription(PointCloud2, topic, self.on_points, 2, callback_group=subs)
        for topic, kind in [(topics.RECON_RENDER, "color"), (topics.RECON_DEOCCLUDED, "color"),
                            (topics.RECON_VIEW_IMAGE, "color"), (topics.RECON_RENDER_DEPTH, "depth"),
                            (topics.DEPTH, "depth")]:
            self.subscription(Image, topic, lambda m, t=topic, k=kind: self.on_image(m, t, k), 2,
                              callback_group=subs)
        self.subscription(Image, topics.LEFT_RECT, lambda m: self.on_live(m, True), 2, callback_group=subs)
        self.subscription(Image, topics.LEFT_IMAGE, lambda m: self.on_live(m, False), 2, callback_group=subs)
        self.subscription(Image, topics.INSTRUMENT_MASK, self.on_mask, 2, callback_group=subs)
        for topic in (topics.LEFT_RECT_INFO, topics.LEFT_INFO):
            self.subscription(CameraInfo, topic, self.on_info, 2, callback_group=subs)
        self.subscription(PoseStamped, topics.CAMERA_POSE, self.on_pose, callback_group=subs)
        self.subscription(TFMessage, topics.TF, self.on_tf, callback_group=subs)
        self.subscription(PointStamped, topics.CLICKED_POINT, self.on_clicked_point, callback_group=subs)
        self.subscription(PointCloud2, topics.RECON_GAUSSIANS, self.on_gaussians, 1, callback_group=subs)
        for topic, typ in [(topics.RECON_STATUS, TrainerStatus), (topics.NODE_STATUS, NodeStatus),
                           (topics.DIAGNOSTICS, DiagnosticArray), (topics.HEALTH, NodeStatus)]:
            self.subscription(typ, topic, lambda m, t=topic: self.log_json(t, _msg_dict(m)), callback_group=subs)

        self.roi_pub = self.publisher(RegionOfInterest, topics.RECON_ROI)
        self.marker_pub = self.publisher(MarkerArray, topics.RECON_ROI_MARKERS)
        self.view_pub = self.publisher(ViewRequest, topics.RECON_VIEW_REQUEST)
        self.splat_request_pub = self.publisher(Time, topics.RECON_GAUSSIANS_REQUEST)
        self.trigger = {name: self.create_client(Trigger, srv, callback_group=self.clients_group)
                        for name, srv in [("pause", topics.SRV_PAUSE), ("resume", topics.SRV_RESUME),
                                          ("reset", topics.SRV_RESET)]}
        self.save_client = self.create_client(SaveModel, topics.SRV_SAVE, callback_group=self.clients_group)
        self.param_clients = {node: AsyncParameterClient(self, node, callback_group=self.clients_group)
                              for node in sorted({t.node for t in self.tunables.values()})}

        json_req = MessageSchema(encoding="json", schema=_schema("surg3d/JsonRequest"))
        services = [Service(name, schema=ServiceSchema(typ, request=json_req, response=json_req), handler=h)
                    for name, typ, h in [
                        (topics.absolute(topics.SRV_PAUSE), "std_srvs/srv/Trigger", self.srv_trigger),
                        (topics.absolute(topics.SRV_RESUME), "std_srvs/srv/Trigger", self.srv_trigger),
                        (topics.absolute(topics.SRV_RESET), "std_srvs/srv/Trigger", self.srv_trigger),
                        (topics.absolute(topics.SRV_SAVE), "surg3d_msgs/srv/SaveModel", self.srv_save),
                        (topics.absolute(f"{topics.RECON_ROI}/delete"), "surg3d/DeleteRoi", self.srv_roi_delete),
                        (topics.absolute(f"{topics.RECON_ROI}/clear"), "std_srvs/srv/Trigger",
                         self.srv_roi_clear)]]
        self.server = foxglove.start_server(
            name="surg3d", host=p.host, port=p.port, server_listener=_Listener(self),
            capabilities=[Capability.ClientPublish, Capability.Services, Capability.Parameters],
            supported_encodings=["json"], services=services)
        self.port = self.server.port
        self.get_logger().info(f"Foxglove WebSocket on ws://{p.host}:{self.port} "
                               "(subprotocol foxglove.sdk.v1), "
                               f"{len(self.rois.all())} stored regions of interest")
        # The stored regions (a restarted bridge, a new launch in the same output_dir) reach the trainer too.
        for r in self.rois.all():
            self.publish_region(r.id, r.center, r.radius, r.label)
        self.publish_rois()
        self.create_timer(0.2, self._flush_resend, callback_group=subs)
        if p.splats_rate > 0:
            self.create_timer(1.0 / p.splats_rate, self.request_splats, callback_group=subs)

    # --- out: ROS -> viewers -------------------------------------------------------------------------------
    def log_json(self, topic: str, msg: dict) -> None:
        """Log `msg` on the channel of `topic` and keep it for viewers that subscribe later."""
        data = display.encode(msg)
        with self._lock:
            self._latest[topic] = data
        self.channels[topic].log(data)
        self.count(f"out.{topic}")

    def resend(self, channel: str) -> None:
        """A viewer subscribed to `channel`: send it the newest message soon (not from the server's thread)."""
        with self._lock:
            self._resend.add(self._topic_of_channel.get(channel, channel))

    def _flush_resend(self) -> None:
        with self._lock:
            pending = [(t, self._latest[t]) for t in self._resend if t in self._latest]
            self._resend.clear()
        for topic, data in pending:
            self.channels[topic].log(data)

    def _due(self, topic: str) -> bool:
        """Rate limit of image channels, and no encoding work for a channel nobody watches."""
        if not self.channels[topic].has_sinks():
            return False
        now = time.monotonic()
        if now - self._last_image.get(topic, -1e9) < self.min_image_dt:
            return False
        self._last_image[topic] = now
        return True

    def on_points(self, msg: PointCloud2) -> None:
        """Trainer cloud (or the monitor's snapshot of it) -> foxglove.PointCloud (at most max_points)."""
        try:
            rec = msg_to_pointcloud(msg)
            names = rec.dtype.names or ()
            if not {"x", "y", "z"} <= set(names):
                raise MessageError(f"point cloud without x, y, z fields (has {', '.join(names)})")
            idx = display.subsample(len(rec), self.max_points)
            rec = rec[idx]
            xyz = np.stack([rec["x"], rec["y"], rec["z"]], axis=1).astype(np.float32)
            ok = np.isfinite(xyz).all(axis=1)
            rgb = unpack_rgb(rec["rgb"])[ok] if "rgb" in names else None
            alpha = np.clip(rec["opacity"][ok], 0, 1) if "opacity" in names else None
            frame = msg.header.frame_id or topics.WORLD_FRAME
            self.log_json(topics.RECON_POINTS, display.point_cloud_json(
                xyz[ok], rgb, alpha, stamp_to_ns(msg.header.stamp), frame))
        except MessageError as e:
            self.report_problem("bad_points", str(e))

    def request_splats(self) -> None:
        """Ask the trainer for the model at the splat view's moment, while a viewer watches."""
        if self.splats_channel.has_sinks():
            self.splat_request_pub.publish(ns_to_stamp(self._splat_time_ns))

    def on_gaussians(self, msg: PointCloud2) -> None:
        """The trainer's Gaussians -> binary splat chunks (the most opaque splats_max)."""
        try:
            rec = msg_to_pointcloud(msg)
            need = {"x", "y", "z", "rgb", "opacity", "scale_x", "scale_y", "scale_z", "rot_w", "rot_x", "rot_y",
                    "rot_z"}
            if not need <= set(rec.dtype.names or ()):
                raise MessageError(f"Gaussians without {', '.join(sorted(need - set(rec.dtype.names or ())))}")
            if len(rec) > self.splats_max:
                rec = rec[np.argsort(-rec["opacity"])[:self.splats_max]]
            xyz = np.stack([rec["x"], rec["y"], rec["z"]], 1)
            rec = rec[np.isfinite(xyz).all(1)]
            def cols(*names: str) -> np.ndarray:
                return np.stack([rec[n] for n in names], 1).astype(np.float32)

            self._splat_update += 1
            chunks = display.encode_splats(cols("x", "y", "z"), cols("scale_x", "scale_y", "scale_z"),
                                           cols("rot_w", "rot_x", "rot_y", "rot_z"),
                                           unpack_rgb(rec["rgb"]).astype(np.float32) / 255.0,
                                           rec["opacity"].astype(np.float32), stamp_to_ns(msg.header.stamp),
                                           self._splat_update)
        except MessageError as e:
            self.report_problem("bad_gaussians", str(e))
            return
        for c in chunks:
            self.splats_channel.log(c)
        self.count("out.splats")
        self.count("out.splats_bytes", sum(len(c) for c in chunks))

    def on_image(self, msg: Image, topic: str, kind: str) -> None:
        """Rendered / de-occluded / virtual views as JPEG; depth images as 16UC1 millimetres."""
        if not self._due(topic):
            return
        stamp, frame = stamp_to_ns(msg.header.stamp), msg.header.frame_id
        try:
            if kind == "depth":
                mm = display.depth_to_mm16(msg_to_image(msg, "32FC1"))
                self.log_json(topic, display.raw_image_json(mm, "16UC1", stamp, frame))
            else:
                rgb = msg_to_image(msg, ("rgb8", "mono8"))
                rgb = np.repeat(rgb[..., None], 3, axis=2) if rgb.ndim == 2 else rgb
                self.log_json(topic, display.jpeg_json(rgb, stamp, frame, self.jpeg_quality))
        except (MessageError, ValueError) as e:
            self.report_problem("bad_image", f"{topic}: {e}")

    def on_mask(self, msg: Image) -> None:
        """Keep the newest instrument mask for the live overlay."""
        try:
            self._mask = np.array(msg_to_image(msg, "mono8"))
        except MessageError as e:
            self.report_problem("bad_mask", str(e))

    def on_live(self, msg: Image, rectified: bool) -> None:
        """Live image (rectified when perception runs, else raw) with the newest mask overlaid."""
        now = time.monotonic()
        if rectified:
            self._rect_time = now
        elif now - self._rect_time < 2.0:
            return  # the rectified stream is live: show that one
        if not self._due(topics.UI_LIVE):
            return
        try:
            rgb = np.ascontiguousarray(msg_to_image(msg, "rgb8"))
            mask = self._mask
            if mask is not None:
                rgb = display.overlay_mask(rgb, mask)
            self.log_json(topics.UI_LIVE, display.jpeg_json(rgb, stamp_to_ns(msg.header.stamp), msg.header.frame_id,
                                                     self.jpeg_quality))
        except (MessageError, ValueError) as e:
            self.report_problem("bad_image", f"live: {e}")

    def on_info(self, msg: CameraInfo) -> None:
        """Camera intrinsics for the frustum (once a second is plenty)."""
        now = time.monotonic()
        if now - self._last_image.get(topics.UI_CALIBRATION, -1e9) < 1.0:
            return
        self._last_image[topics.UI_CALIBRATION] = now
        try:
            cam = msg_to_camera(msg)
        except MessageError as e:
            self.report_problem("bad_camera_info", str(e))
            return
        K = cam.P[:, :3] if cam.is_rectified else cam.K
        self.log_json(topics.UI_CALIBRATION, display.camera_calibration_json(
            K, cam.width, cam.height, stamp_to_ns(msg.header.stamp), cam.frame_id))

    def on_pose(self, msg: PoseStamped) -> None:
        """Camera pose -> a world <- camera frame transform on /tf."""
        try:
            T = msg_to_pose(msg)
        except MessageError as e:
            self.report_problem("bad_pose", str(e))
            return
        # PoseStamped.header.frame_id is the parent (world); the child is the left optical frame.
        self.log_json(topics.TF, {"transforms": [display.frame_transform_json(
            T, stamp_to_ns(msg.header.stamp), msg.header.frame_id or topics.WORLD_FRAME,
            topics.LEFT_OPTICAL_FRAME)]})

    def on_tf(self, msg: TFMessage) -> None:
        """ROS /tf -> foxglove.FrameTransforms."""
        out = []
        for tf in msg.transforms:
            t, r = tf.transform.translation, tf.transform.rotation
            out.append({"timestamp": display.time_json(stamp_to_ns(tf.header.stamp)),
                        "parent_frame_id": tf.header.frame_id, "child_frame_id": tf.child_frame_id,
                        "translation": {"x": t.x, "y": t.y, "z": t.z},
                        "rotation": {"x": r.x, "y": r.y, "z": r.z, "w": r.w}})
        self.log_json(topics.TF, {"transforms": out})

    def publish_rois(self) -> None:
        """Show the stored regions (viewer SceneUpdate + RViz MarkerArray)."""
        now = self.get_clock().now().nanoseconds
        rois = self.rois.all()
        self.log_json(topics.UI_ROI_SCENE, display.roi_scene_json(rois, now, topics.WORLD_FRAME))
        markers = [Marker(header=header(now, ""), ns="surg3d_roi", action=Marker.DELETEALL)]
        for r in rois:
            m = Marker(header=header(now, topics.WORLD_FRAME), ns="surg3d_roi", id=r.id, type=Marker.SPHERE,
                       action=Marker.ADD, text=r.label)
            m.pose.position = Point(x=r.center[0], y=r.center[1], z=r.center[2])
            m.pose.orientation.w = 1.0
            m.scale.x = m.scale.y = m.scale.z = 2 * r.radius
            m.color.r, m.color.g, m.color.b, m.color.a = 1.0, 0.85, 0.0, 0.6
            markers.append(m)
        self.marker_pub.publish(MarkerArray(markers=markers))

    def publish_region(self, roi_id: int, center: tuple[float, float, float] = (0.0, 0.0, 0.0),
                       radius: float = 0.0, label: str = "") -> None:
        """One update on ROS /recon/roi (latched, for the trainer): a region, or with radius 0 the deletion of
        region `roi_id` (every region with id 0)."""
        self.roi_pub.publish(region_to_msg(Region(roi_id, center, radius), self.get_clock().now().nanoseconds,
                                           topics.WORLD_FRAME, label))

    # --- in: viewers -> ROS --------------------------------------------------------------------------------
    def refuse(self, what: str, reason: str) -> None:
        """Log, count and tell the viewers about a refused input."""
        self.report_problem("refused_input", f"{what}: {reason}", WARN)
        self.server.publish_status(f"refused {what}: {reason}", StatusLevel.Warning)

    def client_advertise(self, client_id: int, channel) -> None:
        """Accept a client channel only on a known topic with JSON encoding."""
        if channel.topic not in CLIENT_TOPICS:
            self.refuse(f"client channel {channel.topic}",
                        f"unknown topic (accepted: {', '.join(CLIENT_TOPICS)})")
            return
        if channel.encoding != "json":
            self.refuse(f"client channel {channel.topic}", f"encoding {channel.encoding!r}, expected json")
            return
        self.client_channels[(client_id, channel.id)] = channel.topic

    def client_message(self, client_id: int, chan_id: int, data: bytes) -> None:
        """A message from a viewer: a region of interest or a virtual viewpoint."""
        topic = self.client_channels.get((client_id, chan_id))
        if topic is None:
            self.refuse(f"message on client channel {chan_id}", "channel not advertised or refused")
            return
        try:
            obj = json.loads(data)
            if CLIENT_TOPICS[topic] == "roi":
                self.add_roi(obj)
            elif CLIENT_TOPICS[topic] == "splat_time":
                self._splat_time_ns = parse_splat_time(obj)
                self.request_splats()
            else:
                view = parse_view_request(obj)
                self.view_pub.publish(ViewRequest(
                    header=header(0, topics.WORLD_FRAME), pose=pose_to_msg(view.T_world_camera, 0, "").pose,
                    width=view.width, height=view.height, deoccluded=view.deoccluded))
                self.count("in.view_request")
        except (ValueError, InputError) as e:  # json.JSONDecodeError is a ValueError
            self.refuse(f"message on {topic}", str(e))

    def add_roi(self, obj: object) -> None:
        """Validate, store, publish and show a new region of interest (InputError when refused)."""
        roi = self.rois.add(parse_roi(obj, self.roi_radius), self.get_clock().now().nanoseconds)
        self.publish_region(roi.id, roi.center, roi.radius, roi.label)
        self.publish_rois()
        self.count("in.roi")
        self.get_logger().info(f"region of interest #{roi.id} at {roi.center} r={roi.radius} m")

    def on_clicked_point(self, msg: PointStamped) -> None:
        """RViz's Publish Point tool on ROS /clicked_point -> a region of interest (world frame only)."""
        try:
            if msg.header.frame_id not in ("", topics.WORLD_FRAME):
                raise InputError(f"point in frame {msg.header.frame_id!r}, expected {topics.WORLD_FRAME!r}")
            self.add_roi({"point": {"x": msg.point.x, "y": msg.point.y, "z": msg.point.z}})
        except InputError as e:
            self.refuse(f"ROS {topics.CLICKED_POINT}", str(e))

    def _call(self, client, request, name: str):
        """Call a ROS service from a server thread and wait for the answer (the executor spins elsewhere)."""
        if not client.wait_for_service(timeout_sec=min(self.timeout, 2.0)):
            raise RuntimeError(f"service {name} is not available (is the trainer running?)")
        future = client.call_async(request)
        if not _wait(future, self.timeout):
            future.cancel()
            raise RuntimeError(f"service {name} did not answer within {self.timeout:g} s")
        return future.result()

    def _request(self, req: ServiceRequest) -> Any:
        if req.encoding != "json":
            raise InputError(f"request encoding {req.encoding!r}, expected json")
        try:
            return json.loads(req.payload) if req.payload else None
        except ValueError as e:
            raise InputError(f"request is not JSON: {e}") from None

    def _guard(self, req: ServiceRequest, body) -> bytes:
        """Run a service body; refusals and failures reach the viewer as a service-call failure."""
        try:
            return json.dumps(body()).encode()
        except InputError as e:
            self.refuse(f"call of {req.service_name}", str(e))
            raise
        except RuntimeError as e:
            self.report_problem("service_failed", f"{req.service_name}: {e}")
            raise

    def srv_trigger(self, req: ServiceRequest) -> bytes:
        """pause / resume / reset -> the trainer's std_srvs/Trigger services."""
        def body() -> dict:
            name = req.service_name.rsplit("/", 1)[-1]
            parse_empty(self._request(req), name)
            res = self._call(self.trigger[name], Trigger.Request(), req.service_name)
            self.get_logger().info(f"{req.service_name}: success={res.success} {res.message}")
            return {"success": bool(res.success), "message": res.message}
        return self._guard(req, body)

    def srv_save(self, req: ServiceRequest) -> bytes:
        """save {"kind": "ply"|"checkpoint", "path": ""} -> the trainer's SaveModel service."""
        def body() -> dict:
            kind, path = parse_save(self._request(req))
            res = self._call(self.save_client, SaveModel.Request(kind=kind, path=path), req.service_name)
            return {"success": bool(res.success), "message": res.message, "path": res.path}
        return self._guard(req, body)

    def srv_roi_delete(self, req: ServiceRequest) -> bytes:
        """Delete one region of interest {"id": n}."""
        def body() -> dict:
            obj = self._request(req)
            if not isinstance(obj, dict) or "id" not in obj:
                raise InputError('expected {"id": <region id>}')
            roi = self.rois.remove(integer(obj["id"], "id", 1, 2**31))
            self.publish_region(roi.id)
            self.publish_rois()
            return {"success": True, "message": f"deleted region #{roi.id}"}
        return self._guard(req, body)

    def srv_roi_clear(self, req: ServiceRequest) -> bytes:
        """Delete every region of interest."""
        def body() -> dict:
            parse_empty(self._request(req), "clear")
            n = self.rois.clear()
            self.publish_region(0)
            self.publish_rois()
            return {"success": True, "message": f"deleted {n} regions"}
        return self._guard(req, body)

    # --- parameters ----------------------------------------------------------------------------------------
    def _fetch(self, keys: list[str]) -> list[Parameter]:
        """Current values of tunables `keys` from their nodes (those that do not answer are left out)."""
        out = []
        for node in sorted({self.tunables[k].node for k in keys}):
            names = [self.tunables[k].name for k in keys if self.tunables[k].node == node]
            client = self.param_clients[node]
            if not client.services_are_ready() and not client.wait_for_services(timeout_sec=1.0):
                continue
            future = client.get_parameters(names)
            if not _wait(future, self.timeout) or future.result() is None:
                continue
            for name, v in zip(names, future.result().values, strict=True):
                value = {ParameterType.PARAMETER_INTEGER: v.integer_value,
                         ParameterType.PARAMETER_DOUBLE: v.double_value}.get(v.type)
                if value is not None:
                    out.append(Parameter(f"{node}.{name}", value=value))
        return out

    def get_tunables(self, names: list[str]) -> list[Parameter]:
        """getParameters: the tunables asked for (all when the list is empty)."""
        keys = [n for n in names if n in self.tunables] if names else list(self.tunables)
        return self._fetch(keys)

    def set_tunables(self, params: list[Parameter]) -> list[Parameter]:
        """setParameters: validate every value first; any refusal changes nothing. Returns current values."""
        try:
            checked = []
            for prm in params:
                tun = self.tunables.get(prm.name)
                if tun is None:
                    raise InputError(f"unknown parameter {prm.name!r} (tunable: {', '.join(self.tunables)})")
                checked.append((tun, tun.check(prm.get_value())))
            for node in sorted({t.node for t, _ in checked}):
                ros_params = [RosParameter(t.name, value=v) for t, v in checked if t.node == node]
                client = self.param_clients[node]
                if not client.wait_for_services(timeout_sec=min(self.timeout, 2.0)):
                    raise RuntimeError(f"node {node} does not answer parameter requests")
                future = client.set_parameters(ros_params)
                if not _wait(future, self.timeout):
                    raise RuntimeError(f"node {node} did not answer the change within {self.timeout:g} s")
                for rp, res in zip(ros_params, future.result().results, strict=True):
                    if not res.successful:
                        raise RuntimeError(f"{node} refused {rp.name}={rp.value}: {res.reason}")
                changes = ", ".join(f"{q.name}={q.value}" for q in ros_params)
                self.get_logger().info(f"set on {node}: {changes}")
        except (InputError, RuntimeError) as e:
            self.refuse("parameter change", str(e))
        return self._fetch([p.name for p in params if p.name in self.tunables])

    def close(self) -> None:
        """Stop the WebSocket server."""
        self.server.stop()
        super().close()


def main() -> None:
    """Entry point: `python -m surg3d_nodes.ros.nodes.foxglove_bridge --ros-args ...`."""
    run_node(FoxgloveBridge)


if __name__ == "__main__":
    main()
