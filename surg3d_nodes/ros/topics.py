"""Topic and service names of the graph: the one place they are spelt out (their QoS: qos.py).

The graph's own names are relative: they resolve in the node's namespace, so a whole graph runs under a
namespace (`__ns:=/rig2`, or a launch namespace) without a remapping, and a preset remaps an input once for
all its nodes (config/graph.yaml, e.g. the dVRK rig's camera topics). Names that ROS tools expect at the root
stay absolute: /tf, /clock, /diagnostics, and RViz's /clicked_point and /goal_pose. Where a name leaves ROS
(bag topics, viewer channels) it is written absolute (`absolute`).
"""

# Stereo input (from a camera driver, the dVRK video pipeline or bag_replay).
LEFT_IMAGE = "stereo/left/image_raw"
RIGHT_IMAGE = "stereo/right/image_raw"
LEFT_INFO = "stereo/left/camera_info"
RIGHT_INFO = "stereo/right/camera_info"
CAMERA_POSE = "camera/pose"              # geometry_msgs/PoseStamped, T_world_camera (left optical frame)
TF = "/tf"
CLOCK = "/clock"

# Dataset ground truth carried in bags for evaluation only (never consumed by the live path).
DATASET_DEPTH = "dataset/depth"
DATASET_MASK = "dataset/tool_mask"
DATASET_TISSUE = "dataset/tissue_image"

# Perception.
LEFT_RECT = "stereo/left/image_rect"
LEFT_RECT_INFO = "stereo/left/camera_info_rect"
DEPTH = "depth/image"
DEPTH_CONFIDENCE = "depth/confidence"
DEPTH_POINTS = "depth/points"
INSTRUMENT_MASK = "instrument/mask"
INSTRUMENT_PRIOR = "instrument/prior_mask"

# Reconstruction.
RECON_POINTS = "recon/points"
RECON_RENDER = "recon/render/image"
RECON_RENDER_DEPTH = "recon/render/depth"
RECON_DEOCCLUDED = "recon/deoccluded/image"
RECON_STATUS = "recon/status"
RECON_VIEW_REQUEST = "recon/view_request"
RECON_VIEW_IMAGE = "recon/view/image"
RECON_GAUSSIANS = "recon/gaussians"       # PointCloud2 of every Gaussian (x y z, scale_*, rot_*, rgb, opacity)
RECON_GAUSSIANS_REQUEST = "recon/gaussians/request"  # builtin_interfaces/Time: the moment to send (0: newest)
RECON_ROI = "recon/roi"
RECON_ROI_MARKERS = "recon/roi/markers"  # visualization_msgs/MarkerArray of the regions (RViz)
CLICKED_POINT = "/clicked_point"          # RViz's and Foxglove's publish-point tools
GOAL_POSE = "/goal_pose"                  # RViz's and Foxglove's pose tools (a virtual viewpoint)
SRV_PAUSE = "recon/pause"
SRV_RESUME = "recon/resume"
SRV_RESET = "recon/reset"
SRV_SAVE = "recon/save"
SRV_LOAD = "recon/load"
SRV_RENDER_VIEW = "recon/render_view"

# Monitoring.
NODE_STATUS = "surg3d/node_status"       # surg3d_msgs/NodeStatus heartbeat of every node
DIAGNOSTICS = "/diagnostics"
HEALTH = "surg3d/health"                 # surg3d_msgs/NodeStatus: the monitor's compact verdict for the UI
SNAPSHOT_POINTS = "surg3d/snapshot/points"  # the newest cloud, re-sent by the monitor each period

# Viewer-only channels of the foxglove_bridge (not ROS topics).
UI_LIVE = "/ui/live"                      # live endoscope image with the instrument mask overlaid (JPEG)
UI_CALIBRATION = "/ui/camera_calibration"
UI_ROI_SCENE = "/ui/rois"                 # foxglove.SceneUpdate of the regions of interest
UI_SPLATS = "/ui/splats"                  # the Gaussian model, binary (viewer.display.encode_splats)
UI_SPLATS_TIME = "/ui/splats/time"        # client publish: {"stamp_ns": n} the moment the splat view shows (0: live)

# Frames.
WORLD_FRAME = "world"
LEFT_OPTICAL_FRAME = "stereo_left_optical"
RIGHT_OPTICAL_FRAME = "stereo_right_optical"


def absolute(name: str, namespace: str = "/") -> str:
    """`name` as a fully qualified name in `namespace` (a relative name gets the namespace in front)."""
    return name if name.startswith("/") else f"{namespace.rstrip('/')}/{name}"
