//! The classifier port, and a stand-in for the vision model with its failure modes.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

/// Why classification failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClassifyError {
    /// The model service is overloaded or down: try later.
    #[error("classifier unavailable: {0}")]
    Unavailable(String),
    /// The image cannot be classified, ever.
    #[error("unreadable image: {0}")]
    Unreadable(String),
}

/// The port: what the image shows.
pub trait Classifier: Send + Sync + 'static {
    /// Classifies the image at `image_url`.
    ///
    /// # Errors
    /// [`ClassifyError`], transient or permanent.
    fn classify(
        &self,
        image_url: &str,
    ) -> impl Future<Output = Result<String, ClassifyError>> + Send;
}

/// A stand-in model: labels an image by its file name; URLs containing `flaky` fail twice
/// before working, `corrupt` never works, `down` is never reachable.
#[derive(Debug, Default)]
pub struct FakeClassifier {
    work: Duration,
    attempts: Mutex<HashMap<String, u32>>,
}

impl FakeClassifier {
    /// A classifier taking `work` per image.
    pub fn new(work: Duration) -> FakeClassifier {
        FakeClassifier { work, attempts: Mutex::default() }
    }

    /// How many times `image_url` was tried.
    pub fn attempts(&self, image_url: &str) -> u32 {
        self.lock().get(image_url).copied().unwrap_or(0)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, u32>> {
        // One counter update per lock: a poisoned map is still consistent.
        self.attempts.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Classifier for FakeClassifier {
    async fn classify(&self, image_url: &str) -> Result<String, ClassifyError> {
        let attempt = {
            let mut attempts = self.lock();
            let count = attempts.entry(image_url.to_string()).or_default();
            *count += 1;
            *count
        };
        tokio::time::sleep(self.work).await;
        if image_url.contains("down") || (image_url.contains("flaky") && attempt <= 2) {
            return Err(ClassifyError::Unavailable(format!("attempt {attempt}: 503")));
        }
        if image_url.contains("corrupt") {
            return Err(ClassifyError::Unreadable(format!("{image_url}: not an image")));
        }
        let name = image_url.rsplit('/').next().unwrap_or(image_url);
        Ok(name.split('.').next().unwrap_or(name).to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn flaky_images_work_on_the_third_attempt() {
        let classifier = FakeClassifier::default();
        let url = "s3://bucket/flaky/bottle.png";
        assert!(classifier.classify(url).await.is_err());
        assert!(classifier.classify(url).await.is_err());
        assert_eq!(classifier.classify(url).await, Ok("bottle".to_string()));
        assert_eq!(classifier.attempts(url), 3);
    }

    #[tokio::test]
    async fn corrupt_images_fail_permanently() {
        let result = FakeClassifier::default().classify("s3://b/corrupt.png").await;
        assert!(matches!(result, Err(ClassifyError::Unreadable(_))));
    }
}
