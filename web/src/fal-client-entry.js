// Entry point for the demo page's bundled client (see web/build.sh).
// The bundle is an IIFE that assigns these exports to `window.FalClient`.
export {
  ApiError,
  ValidationError,
  createFalClient,
  fal,
  isRetryableError,
  parseEndpointId,
  withMiddleware,
  withProxy,
} from "@fal-ai/client";
