"""Networks: shared encoder, synthesis decoders, affine and deformable heads, composed model."""

from .affine_head import AffineHead, affine_to_ddf, centered_grid
from .bundle_net import RegistrationBundleNet, StructuredRegistration, structured_forward
from .decoder import PyramidDecoder, SynthesisDecoder
from .deformable_head import DeformableHead
from .encoder import ModalityEncoder
from .keypoint_head import KeypointAffineHead, fit_affine, soft_argmax
from .regnet import MultiModalRegNet, RegistrationOutput, StageResult, compose_ddf
